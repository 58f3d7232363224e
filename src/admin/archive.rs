//! A bot in one file and back: `bot export` writes an archive, `bot import` recreates the bot
//! from it as a NEW bot (new id, its own database by the naming rule), or `bot import --into`
//! restores it in place over an existing bot.
//!
//! The archive is an uncompressed tar (format described in docs/security.md, "Bot archives"):
//!
//! | part | holds |
//! |---|---|
//! | `archive.json` | first: format and version, the bot's id and name, every other part with its size and SHA-256, the dumped database's row count per table |
//! | `bot.json` | the panel row: name, enabled, created_at, the database override masked; the token in clear only with `--with-token` |
//! | `texts.json` | every text as `{key, lang, value}` |
//! | `manifest.json` | the manifest as stored |
//! | `secrets.json` | the secrets' NAMES only (values never leave the panel) |
//! | `versions.json` | the text and manifest versions, oldest first |
//! | `database.dump` | the bot's database, `pg_dump -Fc` (absent when the bot never started) |
//!
//! Import checks every part against `archive.json` before it writes anything; then it inserts
//! the bot (disabled) with its texts in one transaction, creates its database and restores the
//! dump with `pg_restore --single-transaction`. If the restore fails, the new row and database
//! are removed again. The bot is enabled at the end only if the archive carried a token that no
//! other bot has and the exported bot was enabled; otherwise it waits for `bot set-token` and
//! `bot enable`. The archived versions replace what the version triggers wrote for the
//! import (`panel::store::replace_versions`).
//!
//! In place ([`Admin::import_bot_into`]): restore into a staging database beside the bot and
//! verify its row counts; disable the bot and wait until it stopped; rename its database aside
//! and the staging one into its place; replace its panel rows in one transaction (the commit
//! point); enable it again and drop the old database. A failure before the commit puts the old
//! data back; each database involved carries a comment (a [`Marker`]) so that running the
//! same import again after a crash finishes it. The order is documented in docs/security.md.
//!
//! File work is synchronous (these are one-shot operator commands); `pg_dump` and
//! `pg_restore` run as child processes, their password in `PGPASSWORD`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::bots::validate_name;
use super::{Admin, AdminError};
use crate::botdb::BotDbTarget;
use crate::botdb::store as botdb;
use crate::mask::{error_line, mask_url};
use crate::panel::store::ArchivedVersions;
use crate::panel::{PanelError, store};
use crate::token::BotToken;

/// `archive.json`'s `format`.
pub const FORMAT: &str = "botvisor-bot-archive";
/// The archive format version this binary writes (2 added `versions.json` and the row counts
/// in `archive.json`).
pub const VERSION: u32 = 2;
/// The oldest archive format version this binary reads.
pub const MIN_VERSION: u32 = 1;
/// The index part, first in the archive.
pub const INDEX: &str = "archive.json";
/// The database part.
pub const DATABASE_PART: &str = "database.dump";
/// The versions part (since format version 2).
pub const VERSIONS_PART: &str = "versions.json";
/// Parts every archive has besides the index.
const REQUIRED_PARTS: [&str; 4] = ["bot.json", "texts.json", "manifest.json", "secrets.json"];
/// Suffix of the database an in-place import restores into before the swap.
pub const STAGING_SUFFIX: &str = "_import";
/// Suffix of the name the bot's old database is set aside under until the import commits.
pub const ASIDE_SUFFIX: &str = "_old";
/// How a database comment marks it as part of an in-place import (JSON follows).
const MARKER_PREFIX: &str = "botvisor in-place import ";
/// Largest JSON part read into memory (texts and manifests are far smaller).
const MAX_JSON_PART: u64 = 64 * 1024 * 1024;

/// The PostgreSQL client programs export and import run.
#[derive(Debug, Clone)]
pub struct PgTools {
    /// `pg_dump` (a path, or a name looked up in `PATH`).
    pub pg_dump: PathBuf,
    /// `pg_restore`.
    pub pg_restore: PathBuf,
}

impl Default for PgTools {
    fn default() -> Self {
        Self {
            pg_dump: "pg_dump".into(),
            pg_restore: "pg_restore".into(),
        }
    }
}

/// One part listed in `archive.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartEntry {
    /// Its file name in the archive.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// `archive.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveIndex {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The exported bot's id.
    pub bot_id: i64,
    /// Its name.
    pub bot_name: String,
    /// When the archive was written.
    pub exported_at: DateTime<Utc>,
    /// Whether `bot.json` holds the token in clear.
    pub with_token: bool,
    /// Every other part.
    pub parts: Vec<PartEntry>,
    /// The row count of every table of the dumped database (`schema.table`), counted in the
    /// snapshot `pg_dump` dumped (since format version 2; absent without a database part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, i64>>,
}

/// `bot.json`: the panel row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BotPart {
    id: i64,
    name: String,
    enabled: bool,
    /// The override as it was, password masked; informative only (an import uses the naming
    /// rule).
    database_override: Option<String>,
    /// The database's name.
    database: Option<String>,
    created_at: DateTime<Utc>,
    /// In clear, only with `--with-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// One text in `texts.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextPart {
    key: String,
    lang: String,
    value: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The archive file.
    pub file: PathBuf,
    /// Its parts, as listed in `archive.json`.
    pub parts: Vec<PartEntry>,
    /// Whether the token is in it, in clear.
    pub with_token: bool,
    /// The database dumped, if the bot had one.
    pub database: Option<String>,
}

/// What an import created.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The new bot's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Texts restored.
    pub texts: usize,
    /// The database restored, if the archive had one.
    pub database: Option<String>,
    /// Whether the token came along (then the bot keeps the exported enabled flag).
    pub token: bool,
    /// The bot that has the archive's token already, when that is why it was left out.
    pub token_held_by: Option<String>,
    /// Whether the new bot is enabled.
    pub enabled: bool,
    /// Secrets the exported bot had, to set again (their values were never exported).
    pub secrets: Vec<String>,
}

/// How long past the daemon's shutdown deadline an in-place import waits for the bot to stop.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often an in-place import reads the bot's status while it waits for the stop.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// How an archive is restored in place.
#[derive(Debug, Clone, Default)]
pub struct IntoOptions<'a> {
    /// The bot's name afterwards; default: the exported bot's name.
    pub name: Option<&'a str>,
    /// Take the archive's token (it must hold one); default: the bot keeps its own.
    pub with_token: bool,
    /// For tests: stop right after this step, leaving what a crash there would leave.
    pub halt_after: Option<ImportStep>,
}

/// The steps of an in-place import after which a crash leaves a distinct state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    /// The staging database is restored and verified; the bot still runs on its old data.
    Restored,
    /// The bot is disabled and stopped.
    Stopped,
    /// The old database is renamed aside.
    SetAside,
    /// The restored database has the bot's database name.
    Swapped,
    /// The panel rows are replaced (committed).
    PanelRows,
}

/// What an in-place import did.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceReport {
    /// The bot.
    pub id: i64,
    /// Its name now.
    pub name: String,
    /// Texts restored.
    pub texts: usize,
    /// Text versions restored.
    pub text_versions: usize,
    /// Manifest versions restored.
    pub manifest_versions: usize,
    /// The bot's database, now the archive's (`None`: the archive had none, the bot has none
    /// until its next start).
    pub database: Option<String>,
    /// Tables whose row counts were checked against the archive (`None`: a format version 1
    /// archive has no counts).
    pub tables_verified: Option<usize>,
    /// The old database, dropped once the import committed.
    pub old_database: Option<String>,
    /// Whether the archive's token replaced the bot's.
    pub token_replaced: bool,
    /// Whether the bot is enabled again (it was before the import).
    pub enabled: bool,
    /// Whether this run finished an interrupted one.
    pub resumed: bool,
    /// Secrets the exported bot had (the bot keeps its own secrets).
    pub secrets: Vec<String>,
    /// What else happened, for the operator.
    pub notes: Vec<String>,
}

/// An archive's JSON parts, parsed and validated.
struct Parts {
    bot: BotPart,
    texts: Vec<(String, String, String)>,
    secrets: Vec<String>,
    versions: ArchivedVersions,
    manifest: crate::content::manifest::Manifest,
    token: Option<BotToken>,
}

/// Checks archived versions: numbers from 1, none twice for the same text or manifest.
fn check_versions(v: &ArchivedVersions) -> Result<(), String> {
    let mut texts = std::collections::BTreeSet::new();
    for t in &v.texts {
        if t.version < 1 || !texts.insert((&t.key, &t.lang, t.version)) {
            return Err(format!(
                "text {} [{}] version {} is out of range or appears twice",
                t.key, t.lang, t.version
            ));
        }
    }
    let mut manifests = std::collections::BTreeSet::new();
    for m in &v.manifests {
        if m.version < 1 || !manifests.insert(m.version) {
            return Err(format!(
                "manifest version {} is out of range or appears twice",
                m.version
            ));
        }
    }
    Ok(())
}

/// Compares restored row counts with the archive's; returns how many tables matched, or the
/// differences (at most five named).
fn compare_counts(
    expected: &BTreeMap<String, i64>,
    got: &BTreeMap<String, i64>,
) -> Result<usize, String> {
    let mut diffs = Vec::new();
    for table in expected
        .keys()
        .chain(got.keys().filter(|t| !expected.contains_key(*t)))
    {
        let (e, g) = (expected.get(table), got.get(table));
        if e != g {
            let show = |n: Option<&i64>| n.map_or("no table".to_owned(), |n| format!("{n} rows"));
            diffs.push(format!(
                "{table}: {} in the archive, {} restored",
                show(e),
                show(g)
            ));
        }
    }
    if diffs.is_empty() {
        return Ok(expected.len());
    }
    let more = diffs.len().saturating_sub(5);
    diffs.truncate(5);
    let mut message = format!(
        "the restored rows do not match the archive: {}",
        diffs.join("; ")
    );
    if more > 0 {
        message.push_str(&format!(" (and {more} more)"));
    }
    Err(message)
}

/// What a database comment says about an in-place import.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    /// The bot imported into.
    bot_id: i64,
    /// The SHA-256 of the archive's `archive.json`.
    archive: String,
    /// Whether the bot was enabled before the import began.
    was_enabled: bool,
}

fn marker_text(m: &Marker) -> String {
    format!(
        "{MARKER_PREFIX}{}",
        serde_json::to_string(m).unwrap_or_default()
    )
}

/// A database as an in-place import finds it.
#[derive(Debug)]
enum DbState {
    /// It does not exist.
    Absent,
    /// It exists, marked by an import into this bot.
    Ours(Marker),
    /// It exists without such a mark.
    Other,
}

impl DbState {
    fn marker(&self) -> Option<&Marker> {
        match self {
            DbState::Ours(m) => Some(m),
            _ => None,
        }
    }
}

/// Whether `db` exists and whether an import into bot `id` marked it.
async fn inspect(db: &BotDbTarget, id: i64) -> Result<DbState, AdminError> {
    Ok(match db.comment().await? {
        None => DbState::Absent,
        Some(comment) => match comment
            .as_deref()
            .and_then(|c| c.strip_prefix(MARKER_PREFIX))
            .and_then(|json| serde_json::from_str::<Marker>(json).ok())
        {
            Some(m) if m.bot_id == id => DbState::Ours(m),
            _ => DbState::Other,
        },
    })
}

fn exists_word(exists: bool) -> &'static str {
    if exists { "exists" } else { "is missing" }
}

/// Puts a bot's old data back after an in-place import failed.
struct Undo<'a> {
    admin: &'a Admin,
    id: i64,
    staging: &'a BotDbTarget,
    aside: &'a BotDbTarget,
    d: &'a BotDbTarget,
    was_enabled: bool,
}

impl Undo<'_> {
    /// Before the swap: drops the staging database, unmarks the bot's database, enables the
    /// bot again if it was; the error says what failed and that the old data is untouched.
    async fn before_swap(&self, reason: String) -> AdminError {
        let id = self.id;
        let mut left = Vec::new();
        if let Err(e) = self.staging.drop_database().await {
            left.push(format!(
                "could not drop {} ({})",
                self.staging.database,
                error_line(&e)
            ));
        }
        if matches!(inspect(self.d, self.id).await, Ok(DbState::Ours(_)))
            && let Err(e) = self.d.set_comment(None).await
        {
            left.push(format!(
                "could not unmark {} ({})",
                self.d.database,
                error_line(&e)
            ));
        }
        let disabled = store::get_bot(&self.admin.pool, id)
            .await
            .is_ok_and(|b| !b.enabled);
        if self.was_enabled
            && disabled
            && let Err(e) = store::set_enabled(&self.admin.pool, id, true).await
        {
            left.push(format!(
                "could not enable bot {id} again ({})",
                error_line(&e)
            ));
        }
        let mut message = format!(
            "import into bot {id} failed: {reason}; bot {id}'s data is untouched{}",
            if self.was_enabled {
                " and it runs again"
            } else {
                ""
            }
        );
        if !left.is_empty() {
            message.push_str(&format!("; but {}", left.join(", ")));
        }
        AdminError::ArchiveFailed(message)
    }

    /// After the old database was set aside: moves the restored one away again (when it
    /// already has the bot's name), renames the old one back, then as [`Undo::before_swap`].
    async fn after_swap(&self, restored_in_place: bool, reason: String) -> AdminError {
        let back = async {
            if restored_in_place && self.d.exists().await? {
                self.d.rename_to(&self.staging.database).await?;
            }
            if self.aside.exists().await? {
                self.aside.rename_to(&self.d.database).await?;
            }
            Ok::<_, crate::botdb::BotDbError>(())
        }
        .await;
        match back {
            Ok(()) => self.before_swap(reason).await,
            Err(e) => AdminError::ArchiveFailed(format!(
                "import into bot {} failed: {reason}; putting its old database back failed too \
                 ({}): the old data is in {}; run the same import again to finish it",
                self.id,
                error_line(&e),
                self.aside.database
            )),
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` into `to`, returning the byte count and the SHA-256.
fn copy_hashed(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<(u64, String)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(ctx.finish().as_ref())))
}

/// A scratch directory removed when dropped.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    /// A new empty directory in `parent`.
    pub(super) fn new(parent: &Path) -> Result<Self, AdminError> {
        let stamp = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let dir = parent.join(format!(".botvisor-archive-{}-{stamp}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| {
            AdminError::ArchiveFailed(format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a tool's stderr, on one line.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Runs a PostgreSQL client program against `target`; the error is one line.
/// Restores `dump` into `target` with `pg_restore` in one transaction (nothing of it stays
/// on an error), without owners or privileges.
async fn restore_dump(tools: &PgTools, target: &BotDbTarget, dump: &Path) -> Result<(), String> {
    let dbname = format!("--dbname={}", target.database);
    run_tool(
        &tools.pg_restore,
        target,
        &[
            "--no-owner".as_ref(),
            "--no-privileges".as_ref(),
            "--exit-on-error".as_ref(),
            "--single-transaction".as_ref(),
            dbname.as_ref(),
            dump.as_os_str(),
        ],
    )
    .await
}

async fn run_tool(
    program: &Path,
    target: &BotDbTarget,
    args: &[&std::ffi::OsStr],
) -> Result<(), String> {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let output = tokio::process::Command::new(program)
        .args(args)
        .envs(target.libpq_env())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{name} not found ({}): install the PostgreSQL client programs \
                 (Debian: postgresql-client)",
                program.display()
            ),
            _ => format!("cannot run {name}: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{name} failed ({}): {}",
            output.status,
            tail(&output.stderr)
        ))
    }
}

/// Dumps `target` into `dump` (`pg_dump -Fc`) and counts its rows per table in the same
/// snapshot (a read-only transaction held open while `pg_dump` runs, `--snapshot`), so the
/// counts describe exactly the rows dumped even while the bot writes; the error is one line.
pub(super) async fn dump_database(
    target: &BotDbTarget,
    dump: &Path,
    tools: &PgTools,
) -> Result<BTreeMap<String, i64>, String> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = target
        .options
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {}", target.database, error_line(&e)))?;
    let result = async {
        let snapshot = botdb::begin_exported_snapshot(&mut conn)
            .await
            .map_err(|e| error_line(&e))?;
        let counts = botdb::table_counts(&mut conn)
            .await
            .map_err(|e| error_line(&e))?;
        let snapshot = format!("--snapshot={snapshot}");
        run_tool(
            &tools.pg_dump,
            target,
            &[
                "--format=custom".as_ref(),
                snapshot.as_ref(),
                "--file".as_ref(),
                dump.as_os_str(),
            ],
        )
        .await?;
        Ok(counts)
    }
    .await;
    let _ = conn.close().await;
    result
}

impl Admin {
    /// Writes bot `id` to one archive file `out` (which must not exist): see the module docs.
    /// With `with_token` the token is in it in clear.
    pub async fn export_bot(
        &self,
        id: i64,
        out: &Path,
        with_token: bool,
        tools: &PgTools,
    ) -> Result<ExportReport, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        if out.exists() {
            return Err(AdminError::Invalid(format!(
                "{} exists already; choose another file or remove it",
                out.display()
            )));
        }
        let token = if with_token {
            let keys = self.keys()?;
            Some(
                bot.open_token(&keys)
                    .map_err(|e| AdminError::ArchiveFailed(format!("bot {id}: {e}")))?
                    .expose()
                    .to_owned(),
            )
        } else {
            None
        };
        let texts: Vec<TextPart> = store::list_texts(&self.pool, id)
            .await?
            .into_iter()
            .map(|t| TextPart {
                key: t.key,
                lang: t.lang,
                value: t.value,
            })
            .collect();
        let secrets: Vec<String> = store::list_secrets(&self.pool, id)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let versions = store::all_versions(&self.pool, id).await?;
        let target = self.bot_target(&bot).ok();
        let bot_part = BotPart {
            id,
            name: bot.name.clone(),
            enabled: bot.enabled,
            database_override: bot.database.as_deref().map(mask_url),
            database: target.as_ref().map(|t| t.database.clone()),
            created_at: bot.created_at,
            token,
        };
        let mut parts: Vec<(String, Vec<u8>)> = vec![
            ("bot.json".into(), pretty(&bot_part)),
            ("texts.json".into(), pretty(&texts)),
            ("manifest.json".into(), pretty(&bot.manifest.0)),
            ("secrets.json".into(), pretty(&secrets)),
            (VERSIONS_PART.into(), pretty(&versions)),
        ];

        // Beside the archive: the same file system (the final rename is atomic) and a place
        // the operator chose for the bot's data.
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let scratch = Scratch::new(parent)?;
        let dump = scratch.0.join(DATABASE_PART);
        let mut database = None;
        let mut tables = None;
        if let Some(target) = &target
            && target.exists().await?
        {
            tables = Some(dump_database(target, &dump, tools).await.map_err(|e| {
                AdminError::ArchiveFailed(format!("bot {id}: {e}; no archive was written"))
            })?);
            database = Some(target.database.clone());
        }

        let failed = |e: std::io::Error| {
            AdminError::ArchiveFailed(format!("cannot write {}: {e}", out.display()))
        };
        // Hash every part first: the index comes first in the archive.
        let mut entries = Vec::new();
        for (name, bytes) in &parts {
            let (n, sha) =
                copy_hashed(&mut bytes.as_slice(), &mut std::io::sink()).map_err(failed)?;
            entries.push(PartEntry {
                name: name.clone(),
                bytes: n,
                sha256: sha,
            });
        }
        if database.is_some() {
            let mut file = std::fs::File::open(&dump).map_err(failed)?;
            let (n, sha) = copy_hashed(&mut file, &mut std::io::sink()).map_err(failed)?;
            entries.push(PartEntry {
                name: DATABASE_PART.into(),
                bytes: n,
                sha256: sha,
            });
        }
        let index = ArchiveIndex {
            format: FORMAT.into(),
            version: VERSION,
            bot_id: id,
            bot_name: bot.name.clone(),
            exported_at: Utc::now(),
            with_token,
            parts: entries.clone(),
            tables,
        };
        parts.insert(0, (INDEX.into(), pretty(&index)));

        let partial = scratch.0.join("archive.tar");
        {
            let file = std::fs::File::create(&partial).map_err(failed)?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            let header = |size: u64| {
                let mut h = tar::Header::new_gnu();
                h.set_size(size);
                h.set_mode(0o600);
                h.set_mtime(index.exported_at.timestamp().max(0) as u64);
                h
            };
            for (name, bytes) in &parts {
                let mut h = header(bytes.len() as u64);
                tar.append_data(&mut h, name, bytes.as_slice())
                    .map_err(failed)?;
            }
            if database.is_some() {
                let file = std::fs::File::open(&dump).map_err(failed)?;
                let len = file.metadata().map_err(failed)?.len();
                let mut h = header(len);
                tar.append_data(&mut h, DATABASE_PART, file)
                    .map_err(failed)?;
            }
            let mut w = tar.into_inner().map_err(failed)?;
            w.flush().map_err(failed)?;
            w.get_ref().sync_all().map_err(failed)?;
        }
        set_private(&partial).map_err(failed)?;
        std::fs::rename(&partial, out).map_err(failed)?;
        Ok(ExportReport {
            file: out.to_owned(),
            parts: entries,
            with_token,
            database,
        })
    }

    /// Recreates a bot from archive `file` as a new bot named `name` (default: the exported
    /// name): see the module docs. A corrupt archive is refused before anything is written;
    /// a failed restore removes the new bot and its database again.
    pub async fn import_bot(
        &self,
        file: &Path,
        name: Option<&str>,
        tools: &PgTools,
    ) -> Result<ImportReport, AdminError> {
        let scratch = Scratch::new(&std::env::temp_dir())?;
        let read = read_archive(file, &scratch.0)?;
        let parts = self.parse_parts(file, &read)?;
        let name = name.unwrap_or(&parts.bot.name);
        validate_name(name)?;
        let keys = self.keys()?;
        let token_held_by = match &parts.token {
            Some(t) => store::token_holder(&self.pool, &keys, t, None).await?,
            None => None,
        };
        let token = parts.token.as_ref().filter(|_| token_held_by.is_none());
        let placement = crate::botdb::placement(&self.settings);
        let id = store::add_imported_bot(
            &self.pool,
            &keys,
            &store::ImportedBot {
                name,
                token,
                manifest: &parts.manifest,
                texts: &parts.texts,
                versions: &parts.versions,
                actor: &self.actor,
                placement: &placement,
            },
        )
        .await?;

        let database = match &read.database {
            Some(dump) => match self.restore_into(id, dump, tools).await {
                Ok(database) => Some(database),
                Err(reason) => return Err(self.undo_import(id, reason).await),
            },
            None => None,
        };
        let enabled = token.is_some() && parts.bot.enabled;
        if enabled {
            store::set_enabled(&self.pool, id, true).await?;
        }
        Ok(ImportReport {
            id,
            name: name.to_owned(),
            texts: parts.texts.len(),
            database,
            token: token.is_some(),
            token_held_by,
            enabled,
            secrets: parts.secrets,
        })
    }

    /// The archive's JSON parts, parsed and validated as `bot add` / `text set` would.
    fn parse_parts(&self, file: &Path, read: &ReadArchive) -> Result<Parts, AdminError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            AdminError::InvalidArchive(format!("{}: {what} is not valid: {e}", file.display()))
        };
        let bot: BotPart =
            serde_json::from_slice(&read.json["bot.json"]).map_err(|e| invalid("bot.json", &e))?;
        let texts: Vec<TextPart> = serde_json::from_slice(&read.json["texts.json"])
            .map_err(|e| invalid("texts.json", &e))?;
        let secrets: Vec<String> = serde_json::from_slice(&read.json["secrets.json"])
            .map_err(|e| invalid("secrets.json", &e))?;
        let versions: ArchivedVersions = match read.json.get(VERSIONS_PART) {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| invalid(VERSIONS_PART, &e))?,
            None => ArchivedVersions::default(),
        };
        check_versions(&versions).map_err(|e| invalid(VERSIONS_PART, &e))?;
        let manifest_text = std::str::from_utf8(&read.json["manifest.json"])
            .map_err(|e| invalid("manifest.json", &e))?;
        let manifest = self.validate_manifest(manifest_text)?;
        let token = bot
            .token
            .as_deref()
            .map(BotToken::parse)
            .transpose()
            .map_err(|e| invalid("bot.json's token", &e))?;
        let texts = texts
            .into_iter()
            .map(|t| (t.key, t.lang, t.value))
            .collect();
        Ok(Parts {
            bot,
            texts,
            secrets,
            versions,
            manifest,
            token,
        })
    }

    /// Restores archive `file` in place over bot `id`: its database and its panel rows become
    /// the archive's. The order, and what a failure or a crash at each step leaves, are in
    /// docs/security.md ("In place"): the old data stays intact and the bot running until
    /// the swap, a failure after it puts the old database back, and running the same import
    /// again after a crash finishes it.
    pub async fn import_bot_into(
        &self,
        file: &Path,
        id: i64,
        opts: &IntoOptions<'_>,
        tools: &PgTools,
    ) -> Result<InPlaceReport, AdminError> {
        let scratch = Scratch::new(&std::env::temp_dir())?;
        let read = read_archive(file, &scratch.0)?;
        let parts = self.parse_parts(file, &read)?;
        let current = store::get_bot(&self.pool, id).await?;
        let Some(lock) = store::try_lock_import(&self.pool, id).await? else {
            return Err(AdminError::Invalid(format!(
                "another import into bot {id} is running; wait for it to finish (nothing was \
                 imported)"
            )));
        };
        let result = self
            .import_locked(file, &read, parts, current, opts, tools)
            .await;
        let _ = sqlx::Connection::close(lock).await;
        result
    }

    /// [`Admin::import_bot_into`] once the archive is read and the bot's import lock held.
    async fn import_locked(
        &self,
        file: &Path,
        read: &ReadArchive,
        parts: Parts,
        current: crate::panel::BotRecord,
        opts: &IntoOptions<'_>,
        tools: &PgTools,
    ) -> Result<InPlaceReport, AdminError> {
        let id = current.id;
        let name = opts.name.unwrap_or(&parts.bot.name).to_owned();
        validate_name(&name)?;
        if let Some(other) = store::name_holder(&self.pool, &name, id).await? {
            return Err(AdminError::Invalid(format!(
                "bot {other} is named {name:?} already; choose another name with --name \
                 (nothing was imported)"
            )));
        }
        let keys = if opts.with_token {
            Some(self.keys()?)
        } else {
            None
        };
        let token = match (&keys, &parts.token) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AdminError::Invalid(format!(
                    "{} holds no token (it was exported without --with-token): import without \
                     --with-token to keep bot {id}'s own",
                    file.display()
                )));
            }
            (Some(keys), Some(token)) => {
                if let Some(holder) = store::token_holder(&self.pool, keys, token, Some(id)).await?
                {
                    return Err(AdminError::Invalid(format!(
                        "the archive's token is already registered for {holder}; nothing was \
                         imported"
                    )));
                }
                Some(token)
            }
        };
        let d = self.bot_target(&current)?;
        let staging = d.sibling(STAGING_SUFFIX);
        let aside = d.sibling(ASIDE_SUFFIX);
        let s_state = inspect(&staging, id).await?;
        let o_state = inspect(&aside, id).await?;
        let d_state = inspect(&d, id).await?;
        for (db, state) in [(&staging, &s_state), (&aside, &o_state)] {
            if matches!(state, DbState::Other) {
                return Err(AdminError::Invalid(format!(
                    "database {} exists and is not botvisor's staging of an import into bot \
                     {id}; rename or drop it, then import again (nothing was imported)",
                    db.database
                )));
            }
        }
        let was_enabled = [&o_state, &s_state, &d_state]
            .into_iter()
            .find_map(DbState::marker)
            .map_or(current.enabled, |m| m.was_enabled);
        let marker = marker_text(&Marker {
            bot_id: id,
            archive: read.index_sha.clone(),
            was_enabled,
        });
        let has_dump = read.database.is_some();
        let mut notes = Vec::new();
        let halt = |step: ImportStep| {
            if opts.halt_after == Some(step) {
                Err(AdminError::ArchiveFailed(format!(
                    "halted after step {step:?}, as a crash there would"
                )))
            } else {
                Ok(())
            }
        };
        let undo = Undo {
            admin: self,
            id,
            staging: &staging,
            aside: &aside,
            d: &d,
            was_enabled,
        };

        // A run that crashed after setting the old database aside is finished, not redone.
        let resumed = match o_state.marker() {
            Some(m) if m.archive != read.index_sha => {
                return Err(AdminError::Invalid(format!(
                    "bot {id} has a half-finished import of another archive ({INDEX} sha256 \
                     {}): its old database is kept as {}; run that import again to finish it",
                    m.archive, aside.database
                )));
            }
            Some(_) => {
                let s_exists = !matches!(s_state, DbState::Absent);
                let d_exists = !matches!(d_state, DbState::Absent);
                match (s_exists, d_exists) {
                    (true, false) => staging.rename_to(&d.database).await?,
                    (false, true) => {}
                    (false, false) if !has_dump => {}
                    _ => {
                        return Err(AdminError::ArchiveFailed(format!(
                            "bot {id}'s interrupted import left {} {} and {} {}: the old data \
                             is in {}; inspect them, then rename {} back to {} by hand",
                            staging.database,
                            exists_word(s_exists),
                            d.database,
                            exists_word(d_exists),
                            aside.database,
                            aside.database,
                            d.database
                        )));
                    }
                }
                notes.push(format!(
                    "finished the interrupted import into bot {id} (its old database was kept as \
                     {})",
                    aside.database
                ));
                true
            }
            None => false,
        };

        let mut verified = None;
        if !resumed {
            // 1. Restore and verify beside the bot, which keeps running on its old data.
            if s_state.marker().is_some() {
                staging.drop_database().await?;
                notes.push(format!(
                    "dropped {}, left by an interrupted import",
                    staging.database
                ));
            }
            if let Some(dump) = &read.database {
                let restored = self
                    .restore_staging(&staging, &marker, dump, read.index.tables.as_ref(), tools)
                    .await;
                match restored {
                    Ok(tables) => verified = tables,
                    Err(reason) => return Err(undo.before_swap(reason).await),
                }
            }
            halt(ImportStep::Restored)?;
            // 2. Stop the bot: disabled through the panel, and its status says so.
            let d_exists = d.exists().await?;
            if d_exists && let Err(e) = d.set_comment(Some(&marker)).await {
                return Err(undo.before_swap(error_line(&e)).await);
            }
            if has_dump || d_exists {
                if store::get_bot(&self.pool, id).await?.enabled {
                    store::set_enabled(&self.pool, id, false).await?;
                }
                if let Err(reason) = self.wait_stopped(id).await {
                    return Err(undo.before_swap(reason).await);
                }
            }
            halt(ImportStep::Stopped)?;
            // 3. Swap: the old database aside (kept until the panel rows are in), the restored
            // one under the bot's name.
            if d.exists().await? {
                let aside_step = async {
                    d.set_comment(Some(&marker)).await?;
                    d.rename_to(&aside.database).await
                }
                .await;
                if let Err(e) = aside_step {
                    return Err(undo.before_swap(error_line(&e)).await);
                }
            }
            halt(ImportStep::SetAside)?;
            if has_dump && let Err(e) = staging.rename_to(&d.database).await {
                return Err(undo.after_swap(false, error_line(&e)).await);
            }
            halt(ImportStep::Swapped)?;
        }

        // 4. The panel rows, in one transaction: the commit point.
        let rows = store::restore_bot_rows(
            &self.pool,
            keys.as_deref(),
            id,
            &store::RestoredBot {
                name: &name,
                token,
                manifest: &parts.manifest,
                texts: &parts.texts,
                versions: &parts.versions,
                actor: &self.actor,
            },
        )
        .await;
        if let Err(e) = rows {
            return Err(undo.after_swap(has_dump, error_line(&e)).await);
        }
        halt(ImportStep::PanelRows)?;

        // 5. Finish: unmark, re-enable, drop the old data.
        if d.exists().await? {
            d.set_comment(None).await?;
        }
        let enabled = store::get_bot(&self.pool, id).await?.enabled;
        if was_enabled && !enabled {
            store::set_enabled(&self.pool, id, true).await?;
        }
        let mut old_database = None;
        if aside.exists().await? {
            match aside.drop_database().await {
                Ok(_) => {
                    notes.push(format!(
                        "the old database (kept as {} during the swap) was dropped",
                        aside.database
                    ));
                    old_database = Some(aside.database.clone());
                }
                Err(e) => notes.push(format!(
                    "warning: the old database is still kept as {}: dropping it failed ({}); \
                     drop it by hand once you no longer need it",
                    aside.database,
                    error_line(&e)
                )),
            }
        }
        self.audit(
            "bot.import",
            Some(id),
            &name,
            Some(serde_json::json!({ "name": current.name })),
            Some(serde_json::json!({
                "name": name,
                "archive": read.index_sha,
                "exported_bot": read.index.bot_id,
                "exported_at": read.index.exported_at,
                "token": token.is_some(),
            })),
        )
        .await?;
        Ok(InPlaceReport {
            id,
            name,
            texts: parts.texts.len(),
            text_versions: parts.versions.texts.len(),
            manifest_versions: parts.versions.manifests.len(),
            database: has_dump.then(|| d.database.clone()),
            tables_verified: verified,
            old_database,
            token_replaced: token.is_some(),
            enabled: was_enabled,
            resumed,
            secrets: parts.secrets,
            notes,
        })
    }

    /// Creates `staging` (marked with `marker`), restores `dump` into it and compares its row
    /// counts with `expected`; returns how many tables were compared (`None`: the archive
    /// predates the counts).
    pub(super) async fn restore_staging(
        &self,
        staging: &BotDbTarget,
        marker: &str,
        dump: &Path,
        expected: Option<&BTreeMap<String, i64>>,
        tools: &PgTools,
    ) -> Result<Option<usize>, String> {
        if !staging
            .ensure_database()
            .await
            .map_err(|e| error_line(&e))?
        {
            return Err(format!("database {} exists already", staging.database));
        }
        staging
            .set_comment(Some(marker))
            .await
            .map_err(|e| error_line(&e))?;
        restore_dump(tools, staging, dump).await?;
        let Some(expected) = expected else {
            return Ok(None);
        };
        let got = staging.table_counts().await.map_err(|e| error_line(&e))?;
        compare_counts(expected, &got).map(Some)
    }

    /// Waits until bot `id` (disabled) is stopped: its status says `stopped`, it has none, or
    /// the instance that wrote it is no longer alive. The deadline is the daemon's shutdown
    /// deadline plus [`STOP_GRACE`].
    pub(super) async fn wait_stopped(&self, id: i64) -> Result<(), String> {
        let wait = self.settings.shutdown_deadline() + STOP_GRACE;
        let until = tokio::time::Instant::now() + wait;
        loop {
            let status = store::get_status(&self.pool, id)
                .await
                .map_err(|e| error_line(&e))?;
            let state = match status {
                None => return Ok(()),
                Some(s) if s.state == "stopped" => return Ok(()),
                Some(s) => {
                    let alive = store::instance_alive(
                        &self.pool,
                        &s.instance,
                        crate::panel::INSTANCE_LIVE.as_secs_f64(),
                    )
                    .await
                    .map_err(|e| error_line(&e))?;
                    if !alive {
                        return Ok(());
                    }
                    s.state
                }
            };
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "bot {id} did not stop within {}s (its status still says {state})",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Creates bot `id`'s database (it must not exist) and restores `dump` into it.
    async fn restore_into(&self, id: i64, dump: &Path, tools: &PgTools) -> Result<String, String> {
        let bot = store::get_bot(&self.pool, id)
            .await
            .map_err(|e| error_line(&e))?;
        let target = self.bot_target(&bot).map_err(|e| error_line(&e))?;
        if !target.ensure_database().await.map_err(|e| error_line(&e))? {
            return Err(format!(
                "database {} exists already (left behind by an earlier bot {id}?); drop it or \
                 back it up first",
                target.database
            ));
        }
        restore_dump(tools, &target, dump).await?;
        Ok(target.database)
    }

    /// Removes the half-imported bot `id` and its database; the error says what failed and
    /// what was undone.
    async fn undo_import(&self, id: i64, reason: String) -> AdminError {
        let mut undone = Vec::new();
        let mut left = Vec::new();
        match store::get_bot(&self.pool, id).await {
            Ok(bot) => {
                if let Ok(target) = self.bot_target(&bot) {
                    match target.drop_database().await {
                        Ok(_) => undone.push(format!("database {}", target.database)),
                        Err(e) => {
                            left.push(format!("database {} ({})", target.database, error_line(&e)))
                        }
                    }
                }
                match store::remove_bot(&self.pool, id).await {
                    Ok(_) | Err(PanelError::BotNotFound(_)) => undone.push(format!("bot {id}")),
                    Err(e) => left.push(format!("bot {id} ({})", error_line(&e))),
                }
            }
            Err(e) => left.push(format!("bot {id} ({})", error_line(&e))),
        }
        let mut message = format!("import failed: {reason}");
        if !undone.is_empty() {
            message.push_str(&format!("; removed again: {}", undone.join(", ")));
        }
        if !left.is_empty() {
            message.push_str(&format!(
                "; could NOT remove: {} (run `botvisor bot erase {id} --yes`)",
                left.join(", ")
            ));
        }
        AdminError::ArchiveFailed(message)
    }
}

/// An archive's parts, verified against its index.
struct ReadArchive {
    /// The index.
    index: ArchiveIndex,
    /// The SHA-256 of `archive.json`: names this archive (it differs for every export).
    index_sha: String,
    /// The JSON parts, by name.
    json: BTreeMap<String, Vec<u8>>,
    /// The database dump, extracted into the scratch directory.
    database: Option<PathBuf>,
}

/// Reads archive `file`, extracting its parts into `scratch`, and checks each against the
/// index (size and SHA-256), that every listed and required part is there and nothing else.
fn read_archive(file: &Path, scratch: &Path) -> Result<ReadArchive, AdminError> {
    let corrupt = |what: String| {
        AdminError::InvalidArchive(format!(
            "{}: not a valid bot archive: {what}; nothing was imported",
            file.display()
        ))
    };
    let f = std::fs::File::open(file)
        .map_err(|e| AdminError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(f));
    let mut index: Option<ArchiveIndex> = None;
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut json = BTreeMap::new();
    let mut database = None;
    let entries = tar.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let path = entry.path().map_err(|e| corrupt(e.to_string()))?;
        let name = path.to_string_lossy().into_owned();
        let known = name == INDEX
            || name == DATABASE_PART
            || name == VERSIONS_PART
            || REQUIRED_PARTS.contains(&name.as_str());
        if !known || !entry.header().entry_type().is_file() {
            return Err(corrupt(format!("unexpected entry {name:?}")));
        }
        if seen.contains_key(&name) {
            return Err(corrupt(format!("{name} appears twice")));
        }
        let read_err = |e: std::io::Error| corrupt(format!("{name}: {e}"));
        if name == DATABASE_PART {
            let path = scratch.join(DATABASE_PART);
            let mut out = std::fs::File::create(&path).map_err(|e| {
                AdminError::ArchiveFailed(format!("cannot write {}: {e}", path.display()))
            })?;
            let got = copy_hashed(&mut entry, &mut out).map_err(read_err)?;
            seen.insert(name, got);
            database = Some(path);
        } else {
            if entry.header().size().unwrap_or(u64::MAX) > MAX_JSON_PART {
                return Err(corrupt(format!(
                    "{name} is larger than {MAX_JSON_PART} bytes"
                )));
            }
            let mut bytes = Vec::new();
            let got = copy_hashed(&mut entry, &mut bytes).map_err(read_err)?;
            if name == INDEX {
                let parsed: ArchiveIndex =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{INDEX}: {e}")))?;
                if parsed.format != FORMAT || !(MIN_VERSION..=VERSION).contains(&parsed.version) {
                    return Err(corrupt(format!(
                        "{INDEX} says {} version {}; this botvisor reads {FORMAT} versions \
                         {MIN_VERSION} to {VERSION}",
                        parsed.format, parsed.version
                    )));
                }
                index = Some(parsed);
            } else {
                json.insert(name.clone(), bytes);
            }
            seen.insert(name, got);
        }
    }
    let index = index.ok_or_else(|| corrupt(format!("{INDEX} is missing")))?;
    for part in &index.parts {
        match seen.get(&part.name) {
            None => return Err(corrupt(format!("{} is missing", part.name))),
            Some((bytes, sha)) if *bytes != part.bytes || *sha != part.sha256 => {
                return Err(corrupt(format!(
                    "{} does not match its checksum in {INDEX}",
                    part.name
                )));
            }
            Some(_) => {}
        }
    }
    for name in seen.keys().filter(|n| *n != INDEX) {
        if !index.parts.iter().any(|p| &p.name == name) {
            return Err(corrupt(format!("{name} is not listed in {INDEX}")));
        }
    }
    if let Some(missing) = REQUIRED_PARTS.iter().find(|p| !json.contains_key(**p)) {
        return Err(corrupt(format!("{missing} is missing")));
    }
    let index_sha = seen
        .get(INDEX)
        .map(|(_, sha)| sha.clone())
        .unwrap_or_default();
    Ok(ReadArchive {
        index,
        index_sha,
        json,
        database,
    })
}

/// Restricts an archive to its owner (it may hold a token, and always holds user data).
fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// `value` as pretty JSON, newline-terminated.
fn pretty<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    #[test]
    fn counts_match_only_table_for_table() {
        let archive = counts(&[("public.users", 2), ("public.messages", 4)]);
        assert_eq!(compare_counts(&archive, &archive.clone()), Ok(2));
        let cases = [
            (
                counts(&[("public.users", 3), ("public.messages", 4)]),
                "public.users: 2 rows in the archive, 3 rows restored",
            ),
            (
                counts(&[("public.users", 2)]),
                "public.messages: 4 rows in the archive, no table restored",
            ),
            (
                counts(&[("public.users", 2), ("public.messages", 4), ("public.x", 0)]),
                "public.x: no table in the archive, 0 rows restored",
            ),
        ];
        for (restored, expected) in cases {
            let e = compare_counts(&archive, &restored).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
        let many: BTreeMap<String, i64> = (0..8).map(|i| (format!("t{i}"), i)).collect();
        let e = compare_counts(&many, &BTreeMap::new()).unwrap_err();
        assert!(e.ends_with("(and 3 more)"), "{e}");
    }

    #[test]
    fn markers_round_trip_and_foreign_comments_are_not_markers() {
        let m = Marker {
            bot_id: 7,
            archive: "ab".repeat(32),
            was_enabled: true,
        };
        let text = marker_text(&m);
        let parsed: Marker =
            serde_json::from_str(text.strip_prefix(MARKER_PREFIX).unwrap()).unwrap();
        assert_eq!((parsed.bot_id, parsed.was_enabled), (7, true));
        assert_eq!(parsed.archive, m.archive);
        assert!("a note of the DBA".strip_prefix(MARKER_PREFIX).is_none());
    }

    #[test]
    fn archived_versions_must_be_numbered_once_from_one() {
        let at = Utc::now();
        let text = |version| crate::panel::access::TextVersion {
            version,
            key: "start".into(),
            lang: "en".into(),
            previous: None,
            value: Some("hi".into()),
            actor: "cli".into(),
            at,
        };
        let ok = ArchivedVersions {
            texts: vec![text(1), text(2)],
            manifests: vec![],
        };
        assert!(check_versions(&ok).is_ok());
        for bad in [vec![text(1), text(1)], vec![text(0)]] {
            let v = ArchivedVersions {
                texts: bad,
                manifests: vec![],
            };
            assert!(check_versions(&v).is_err());
        }
    }
}
