//! A bot in one file and back: `bot export` writes an archive, `bot import` recreates the bot
//! from it as a NEW bot (new id, its own database by the naming rule).
//!
//! The archive is an uncompressed tar (format described in docs/security.md, "Bot archives"):
//!
//! | part | holds |
//! |---|---|
//! | `archive.json` | first: format and version, the bot's id and name, and every other part with its size and SHA-256 |
//! | `bot.json` | the panel row: name, enabled, created_at, the database override masked; the token in clear only with `--with-token` |
//! | `texts.json` | every text as `{key, lang, value}` |
//! | `manifest.json` | the manifest as stored |
//! | `secrets.json` | the secrets' NAMES only (values never leave the panel) |
//! | `database.dump` | the bot's database, `pg_dump -Fc` (absent when the bot never started) |
//!
//! Import checks every part against `archive.json` before it writes anything; then it inserts
//! the bot (disabled) with its texts in one transaction, creates its database and restores the
//! dump with `pg_restore --single-transaction`. If the restore fails, the new row and database
//! are removed again. The bot is enabled at the end only if the archive carried a token that no
//! other bot has and the exported bot was enabled; otherwise it waits for `bot set-token` and
//! `bot enable`.
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
use crate::mask::{error_line, mask_url};
use crate::panel::{PanelError, store};
use crate::token::BotToken;

/// `archive.json`'s `format`.
pub const FORMAT: &str = "botvisor-bot-archive";
/// The archive format version this binary writes and reads.
pub const VERSION: u32 = 1;
/// The index part, first in the archive.
pub const INDEX: &str = "archive.json";
/// The database part.
pub const DATABASE_PART: &str = "database.dump";
/// Parts every archive has besides the index.
const REQUIRED_PARTS: [&str; 4] = ["bot.json", "texts.json", "manifest.json", "secrets.json"];
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
struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory in `parent`.
    fn new(parent: &Path) -> Result<Self, AdminError> {
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
        if let Some(target) = &target
            && target.exists().await?
        {
            run_tool(
                &tools.pg_dump,
                target,
                &[
                    "--format=custom".as_ref(),
                    "--file".as_ref(),
                    dump.as_os_str(),
                ],
            )
            .await
            .map_err(|e| {
                AdminError::ArchiveFailed(format!("bot {id}: {e}; no archive was written"))
            })?;
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
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            AdminError::InvalidArchive(format!("{}: {what} is not valid: {e}", file.display()))
        };
        let bot: BotPart =
            serde_json::from_slice(&read.json["bot.json"]).map_err(|e| invalid("bot.json", &e))?;
        let texts: Vec<TextPart> = serde_json::from_slice(&read.json["texts.json"])
            .map_err(|e| invalid("texts.json", &e))?;
        let secrets: Vec<String> = serde_json::from_slice(&read.json["secrets.json"])
            .map_err(|e| invalid("secrets.json", &e))?;
        let manifest_text = std::str::from_utf8(&read.json["manifest.json"])
            .map_err(|e| invalid("manifest.json", &e))?;
        let manifest = self.validate_manifest(manifest_text)?;
        let name = name.unwrap_or(&bot.name);
        validate_name(name)?;
        let keys = self.keys()?;
        let token = bot
            .token
            .as_deref()
            .map(BotToken::parse)
            .transpose()
            .map_err(|e| invalid("bot.json's token", &e))?;
        let token_held_by = match &token {
            Some(t) => store::token_holder(&self.pool, &keys, t, None).await?,
            None => None,
        };
        let token = token.filter(|_| token_held_by.is_none());
        let texts: Vec<(String, String, String)> = texts
            .into_iter()
            .map(|t| (t.key, t.lang, t.value))
            .collect();
        let id = store::add_imported_bot(
            &self.pool,
            &keys,
            &store::ImportedBot {
                name,
                token: token.as_ref(),
                manifest: &manifest,
                texts: &texts,
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
        let enabled = token.is_some() && bot.enabled;
        if enabled {
            store::set_enabled(&self.pool, id, true).await?;
        }
        Ok(ImportReport {
            id,
            name: name.to_owned(),
            texts: texts.len(),
            database,
            token: token.is_some(),
            token_held_by,
            enabled,
            secrets,
        })
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
        let dbname = format!("--dbname={}", target.database);
        run_tool(
            &tools.pg_restore,
            &target,
            &[
                "--no-owner".as_ref(),
                "--no-privileges".as_ref(),
                "--exit-on-error".as_ref(),
                "--single-transaction".as_ref(),
                dbname.as_ref(),
                dump.as_os_str(),
            ],
        )
        .await?;
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
        let known =
            name == INDEX || name == DATABASE_PART || REQUIRED_PARTS.contains(&name.as_str());
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
                if parsed.format != FORMAT || parsed.version != VERSION {
                    return Err(corrupt(format!(
                        "{INDEX} says {} version {}; this botvisor reads {FORMAT} version {VERSION}",
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
    Ok(ReadArchive { json, database })
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
