//! The admin commands: panel migrations, bots, texts, manifests, reload.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use super::{BotCommand, CliError, Command, ConfigCommand, MigrateAction, TextCommand};
use crate::botdb::{BotDbTarget, validate_override};
use crate::content::manifest::Manifest;
use crate::mask::error_line;
use crate::mask::mask_token;
use crate::panel::{self, BotRecord, BotStatus, store};
use crate::schema::{self, MigrationStatus};
use crate::settings::Settings;
use crate::token::BotToken;

/// Longest bot name accepted.
const MAX_NAME_LEN: usize = 64;

pub(super) async fn run(
    command: &Command,
    settings: &Settings,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Command::Config(ConfigCommand::Check) = command {
        writeln!(
            out,
            "# settings are valid; effective values (secrets masked):"
        )?;
        write!(out, "{}", settings.to_masked_toml())?;
        return Ok(());
    }
    let options = settings.panel_connect_options()?;
    if let Command::Migrate(args) = command {
        return migrate(args, settings, &options, out).await;
    }
    let pool = panel::connect(&options, 2).await?;
    let result = match command {
        Command::Bot(cmd) => bot(cmd, settings, &pool, out).await,
        Command::Text(cmd) => text(cmd, &pool, out).await,
        Command::Config(cmd) => manifest(cmd, &pool, out).await,
        Command::History {
            id,
            chat,
            limit,
            json,
        } => history(settings, &pool, *id, *chat, *limit, *json, out).await,
        Command::Reload { id } => {
            store::notify_reload(&pool, *id).await?;
            match id {
                Some(id) => writeln!(out, "reload requested for bot {id}")?,
                None => writeln!(out, "reload requested for every bot")?,
            }
            Ok(())
        }
        Command::Migrate(_) | Command::Serve | Command::Sandbox(_) => {
            unreachable!("handled by the caller or above")
        }
    };
    pool.close().await;
    result
}

pub(super) fn lint(paths: &[std::path::PathBuf], out: &mut dyn Write) -> Result<(), CliError> {
    let findings =
        crate::schema::lint::run_lint(paths).map_err(|e| CliError::input(error_line(&e)))?;
    for f in &findings {
        writeln!(out, "{f}")?;
    }
    if findings.is_empty() {
        writeln!(out, "no findings")?;
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "{} migration statement(s) would break the previous binary; see docs/migrations.md",
            findings.len()
        )))
    }
}

fn migration_error(e: schema::MigrationError) -> CliError {
    match e {
        schema::MigrationError::Connect { .. } => CliError::input(error_line(&e)),
        other => CliError::failure(error_line(&other)),
    }
}

async fn migrate(
    args: &super::MigrateArgs,
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match &args.action {
        None => {
            schema::apply(&schema::PANEL, options)
                .await
                .map_err(migration_error)?;
            let status = schema::status(&schema::PANEL, options)
                .await
                .map_err(migration_error)?;
            writeln!(out, "panel migrations applied ({} in total)", status.len())?;
            if args.all_bots {
                migrate_all_bots(settings, options, args.concurrency as usize, out).await?;
            }
        }
        Some(MigrateAction::Status {
            bot,
            all_bots,
            json,
        }) => {
            let mut reports: Vec<(String, Vec<MigrationStatus>)> = Vec::new();
            let targets = match (bot, all_bots) {
                (Some(id), _) => {
                    let pool = panel::connect(options, 2).await?;
                    let bot = store::get_bot(&pool, *id).await;
                    pool.close().await;
                    let bot = bot?;
                    vec![bot_target(settings, &bot)?]
                }
                (None, true) => {
                    let status = schema::status(&schema::PANEL, options)
                        .await
                        .map_err(migration_error)?;
                    reports.push(("panel".into(), status));
                    all_targets(settings, options).await?
                }
                (None, false) => {
                    let status = schema::status(&schema::PANEL, options)
                        .await
                        .map_err(migration_error)?;
                    reports.push(("panel".into(), status));
                    Vec::new()
                }
            };
            let mut missing = Vec::new();
            for target in targets {
                let label = format!("bot {} ({})", target.bot_id, target.database);
                if !target
                    .exists()
                    .await
                    .map_err(|e| CliError::input(error_line(&e)))?
                {
                    missing.push(label);
                    continue;
                }
                let status = schema::status(&schema::BOT, &target.options)
                    .await
                    .map_err(migration_error)?;
                reports.push((label, status));
            }
            if *json {
                let value: serde_json::Value = reports
                    .iter()
                    .map(|(label, s)| json!({"database": label, "migrations": s}))
                    .chain(
                        missing
                            .iter()
                            .map(|label| json!({"database": label, "missing": true})),
                    )
                    .collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                )?;
            } else {
                for (label, status) in &reports {
                    writeln!(out, "== {label}")?;
                    print_migrations(status, out)?;
                }
                for label in &missing {
                    writeln!(
                        out,
                        "== {label}: database not created yet (created on first start)"
                    )?;
                }
            }
        }
        Some(MigrateAction::Lint { .. }) => unreachable!("handled before settings are loaded"),
    }
    Ok(())
}

fn bot_target(settings: &Settings, bot: &BotRecord) -> Result<BotDbTarget, CliError> {
    BotDbTarget::resolve(settings, bot.id, bot.database.as_deref())
        .map_err(|e| CliError::input(error_line(&e)))
}

async fn all_targets(
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
) -> Result<Vec<BotDbTarget>, CliError> {
    let pool = panel::connect(options, 2).await?;
    let bots = store::list_bots(&pool).await;
    pool.close().await;
    bots?.iter().map(|b| bot_target(settings, b)).collect()
}

/// Applies bot migrations to every existing bot database, `concurrency` at a time.
async fn migrate_all_bots(
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
    concurrency: usize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use futures::StreamExt;
    let targets = all_targets(settings, options).await?;
    let results: Vec<(BotDbTarget, Result<bool, String>)> = futures::stream::iter(targets)
        .map(|target| async move {
            let result = match target.exists().await {
                Ok(false) => Ok(false),
                Ok(true) => schema::apply(&schema::BOT, &target.options)
                    .await
                    .map(|()| true)
                    .map_err(|e| error_line(&e)),
                Err(e) => Err(error_line(&e)),
            };
            (target, result)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(t, _)| t.bot_id);
    let mut failed = 0;
    for (target, result) in &results {
        match result {
            Ok(true) => writeln!(out, "bot {} ({}): migrated", target.bot_id, target.database)?,
            Ok(false) => writeln!(
                out,
                "bot {} ({}): no database yet (created and migrated on first start)",
                target.bot_id, target.database
            )?,
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "bot {} ({}): FAILED: {e}",
                    target.bot_id, target.database
                )?;
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failure(format!(
            "{failed} of {} bot databases failed to migrate",
            results.len()
        )));
    }
    writeln!(
        out,
        "bot migrations applied to {} bot databases",
        results.len()
    )?;
    Ok(())
}

fn print_migrations(status: &[MigrationStatus], out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{:<8} {:<32} {:<26} STATE",
        "VERSION", "NAME", "APPLIED_AT"
    )?;
    for m in status {
        let at = m
            .applied_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into());
        let state = serde_json::to_value(m.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(out, "{:<8} {:<32} {:<26} {}", m.version, m.name, at, state)?;
    }
    Ok(())
}

fn read_manifest(path: &Path) -> Result<Manifest, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))?;
    Manifest::from_json_str(&text).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

fn parse_token(raw: &str) -> Result<BotToken, CliError> {
    BotToken::parse(raw).map_err(|e| CliError::input(e.to_string()))
}

fn validate_name(name: &str) -> Result<(), CliError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= MAX_NAME_LEN
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CliError::input(format!(
            "invalid bot name {name:?}: use 1-{MAX_NAME_LEN} letters, digits, spaces, _ . -"
        )))
    }
}

/// A bot as `bot list --json` / `bot show --json` print it: the token masked.
#[derive(Serialize)]
struct BotView<'a> {
    id: i64,
    name: &'a str,
    token: String,
    enabled: bool,
    database: String,
    database_override: Option<String>,
    version: i64,
    texts: i64,
    state: Option<&'a str>,
    detail: Option<&'a str>,
    telegram_username: Option<&'a str>,
    instance: Option<&'a str>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    status_updated_at: Option<chrono::DateTime<chrono::Utc>>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn view<'a>(settings: &Settings, bot: &'a BotRecord, status: Option<&'a BotStatus>) -> BotView<'a> {
    let database = BotDbTarget::resolve(settings, bot.id, bot.database.as_deref())
        .map(|t| t.database)
        .unwrap_or_else(|e| format!("<{e}>"));
    BotView {
        id: bot.id,
        name: &bot.name,
        token: mask_token(&bot.token),
        enabled: bot.enabled,
        database,
        database_override: bot.database.as_deref().map(crate::mask::mask_url),
        version: bot.version,
        texts: bot.texts_count,
        state: status.map(|s| s.state.as_str()),
        detail: status.map(|s| s.detail.as_str()),
        telegram_username: status.and_then(|s| s.telegram_username.as_deref()),
        instance: status.map(|s| s.instance.as_str()),
        started_at: status.and_then(|s| s.started_at),
        status_updated_at: status.map(|s| s.updated_at),
        created_at: bot.created_at,
        updated_at: bot.updated_at,
    }
}

async fn bot(
    cmd: &BotCommand,
    settings: &Settings,
    pool: &PgPool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        BotCommand::Add {
            name,
            token,
            manifest,
            disabled,
            database,
        } => {
            validate_name(name)?;
            let token = parse_token(token)?;
            let manifest = match manifest {
                Some(path) => read_manifest(path)?,
                None => Manifest::default(),
            };
            if let Some(db) = database {
                validate_override(db)
                    .map_err(|e| CliError::input(format!("invalid --database: {e}")))?;
            }
            let id = store::add_bot(
                pool,
                &store::NewBot {
                    name,
                    token: &token,
                    enabled: !disabled,
                    database: database.as_deref(),
                    manifest: &manifest,
                },
            )
            .await?;
            writeln!(out, "{id}")?;
        }
        BotCommand::List { json } => {
            let bots = store::list_bots(pool).await?;
            let statuses: BTreeMap<i64, BotStatus> = store::list_statuses(pool)
                .await?
                .into_iter()
                .map(|s| (s.bot_id, s))
                .collect();
            let views: Vec<BotView<'_>> = bots
                .iter()
                .map(|b| view(settings, b, statuses.get(&b.id)))
                .collect();
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&views).unwrap_or_default()
                )?;
            } else {
                writeln!(
                    out,
                    "{:<6} {:<24} {:<22} {:<8} {:<12} {:<20} DATABASE",
                    "ID", "NAME", "TOKEN", "ENABLED", "STATE", "USERNAME"
                )?;
                for v in &views {
                    writeln!(
                        out,
                        "{:<6} {:<24} {:<22} {:<8} {:<12} {:<20} {}",
                        v.id,
                        v.name,
                        v.token,
                        if v.enabled { "yes" } else { "no" },
                        v.state.unwrap_or("-"),
                        v.telegram_username
                            .map(|u| format!("@{u}"))
                            .unwrap_or("-".into()),
                        v.database
                    )?;
                }
            }
        }
        BotCommand::Show { id, json } => {
            let bot = store::get_bot(pool, *id).await?;
            let status = store::get_status(pool, *id).await?;
            let v = view(settings, &bot, status.as_ref());
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                )?;
            } else {
                let or_dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
                writeln!(out, "id:          {}", v.id)?;
                writeln!(out, "name:        {}", v.name)?;
                writeln!(out, "token:       {}", v.token)?;
                writeln!(out, "enabled:     {}", if v.enabled { "yes" } else { "no" })?;
                writeln!(out, "database:    {}", v.database)?;
                writeln!(out, "version:     {}", v.version)?;
                writeln!(out, "texts:       {}", v.texts)?;
                writeln!(out, "state:       {}", or_dash(v.state))?;
                writeln!(out, "detail:      {}", or_dash(v.detail))?;
                writeln!(
                    out,
                    "username:    {}",
                    v.telegram_username
                        .map(|u| format!("@{u}"))
                        .unwrap_or("-".into())
                )?;
                writeln!(out, "instance:    {}", or_dash(v.instance))?;
                writeln!(
                    out,
                    "started_at:  {}",
                    v.started_at.map(|t| t.to_rfc3339()).unwrap_or("-".into())
                )?;
                writeln!(out, "created_at:  {}", v.created_at.to_rfc3339())?;
            }
        }
        BotCommand::Enable { id } => {
            store::set_enabled(pool, *id, true).await?;
            writeln!(out, "bot {id} enabled")?;
        }
        BotCommand::Disable { id } => {
            store::set_enabled(pool, *id, false).await?;
            writeln!(out, "bot {id} disabled")?;
        }
        BotCommand::SetToken { id, token } => {
            let token = parse_token(token)?;
            store::set_token(pool, *id, &token).await?;
            writeln!(out, "bot {id} token set to {token}")?;
        }
        BotCommand::Remove {
            id,
            drop_database,
            yes,
        } => {
            if *drop_database && !*yes {
                return Err(CliError::input(
                    "--drop-database deletes the bot's data for good; add --yes to confirm",
                ));
            }
            let bot = store::get_bot(pool, *id).await?;
            let target = BotDbTarget::resolve(settings, bot.id, bot.database.as_deref());
            store::remove_bot(pool, *id).await?;
            writeln!(out, "bot {id} removed")?;
            match (drop_database, target) {
                (true, Ok(target)) => {
                    let existed = target
                        .drop_database()
                        .await
                        .map_err(|e| CliError::failure(error_line(&e)))?;
                    if existed {
                        writeln!(out, "database {} dropped", target.database)?;
                    } else {
                        writeln!(out, "database {} did not exist", target.database)?;
                    }
                }
                (true, Err(e)) => return Err(CliError::input(error_line(&e))),
                (false, Ok(target)) => {
                    writeln!(out, "database {} kept", target.database)?;
                }
                (false, Err(_)) => {}
            }
        }
    }
    Ok(())
}

async fn history(
    settings: &Settings,
    pool: &PgPool,
    id: i64,
    chat: i64,
    limit: i64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use sqlx::{ConnectOptions, Connection};
    let bot = store::get_bot(pool, id).await?;
    let target = bot_target(settings, &bot)?;
    if !target
        .exists()
        .await
        .map_err(|e| CliError::input(error_line(&e)))?
    {
        return Err(CliError::input(format!(
            "bot {id} has no database yet ({}): it is created on the bot's first start",
            target.database
        )));
    }
    let mut conn =
        target.options.connect().await.map_err(|e| {
            CliError::input(format!("cannot connect to {}: {e}", target.describe()))
        })?;
    let messages = crate::botdb::store::chat_history(&mut conn, chat, limit).await;
    let _ = conn.close().await;
    let messages = messages.map_err(|e| CliError::failure(error_line(&e)))?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&messages).unwrap_or_default()
        )?;
    } else {
        for m in &messages {
            let at = m.created_at.format("%Y-%m-%d %H:%M:%S");
            writeln!(out, "{at} {:<5} {}", m.role, m.content.replace('\n', "\\n"))?;
        }
    }
    Ok(())
}

async fn default_lang(pool: &PgPool, id: i64, lang: Option<&String>) -> Result<String, CliError> {
    if let Some(lang) = lang {
        return Ok(lang.clone());
    }
    let bot = store::get_bot(pool, id).await?;
    Ok(Manifest::from_value(&bot.manifest.0)
        .map(|m| m.default_language)
        .unwrap_or_else(|_| Manifest::default().default_language))
}

async fn text(cmd: &TextCommand, pool: &PgPool, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        TextCommand::Set {
            id,
            key,
            value,
            lang,
        } => {
            let lang = default_lang(pool, *id, lang.as_ref()).await?;
            store::set_text(pool, *id, key, &lang, value).await?;
            writeln!(out, "text {key} [{lang}] set for bot {id}")?;
        }
        TextCommand::Get { id, key, lang } => {
            let lang = default_lang(pool, *id, lang.as_ref()).await?;
            match store::get_text(pool, *id, key, &lang).await? {
                Some(t) => writeln!(out, "{}", t.value)?,
                None => {
                    return Err(CliError::input(format!(
                        "bot {id} has no text {key} [{lang}]"
                    )));
                }
            }
        }
        TextCommand::List { id, json } => {
            let texts = store::list_texts(pool, *id).await?;
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&texts).unwrap_or_default()
                )?;
            } else {
                writeln!(out, "{:<24} {:<6} VALUE", "KEY", "LANG")?;
                for t in &texts {
                    let one_line = t.value.replace('\n', "\\n");
                    writeln!(out, "{:<24} {:<6} {}", t.key, t.lang, one_line)?;
                }
            }
        }
        TextCommand::Import { id, file } => {
            let lang = default_lang(pool, *id, None).await?;
            let texts = read_text_map(file, &lang)?;
            store::import_texts(pool, *id, &texts).await?;
            writeln!(out, "{} texts imported for bot {id}", texts.len())?;
        }
        TextCommand::Export { id } => {
            let texts = store::list_texts(pool, *id).await?;
            let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for t in texts {
                map.entry(t.key).or_default().insert(t.lang, t.value);
            }
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&json!(map)).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// Reads `{"key": "value"}` or `{"key": {"lang": "value"}}` from JSON or TOML.
fn read_text_map(
    path: &Path,
    default_lang: &str,
) -> Result<Vec<(String, String, String)>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let value: serde_json::Value = if is_toml {
        let v: toml::Value = toml::from_str(&text)
            .map_err(|e| CliError::input(format!("{}: invalid TOML: {e}", path.display())))?;
        serde_json::to_value(v).map_err(|e| CliError::input(e.to_string()))?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| CliError::input(format!("{}: invalid JSON: {e}", path.display())))?
    };
    let bad = |what: String| CliError::input(format!("{}: {what}", path.display()));
    let map = value
        .as_object()
        .ok_or_else(|| bad("expected a map of text keys".into()))?;
    let mut texts = Vec::new();
    for (key, v) in map {
        match v {
            serde_json::Value::String(s) => {
                texts.push((key.clone(), default_lang.to_owned(), s.clone()));
            }
            serde_json::Value::Object(langs) => {
                for (lang, v) in langs {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad(format!("{key}.{lang}: expected a string")))?;
                    texts.push((key.clone(), lang.clone(), s.to_owned()));
                }
            }
            _ => {
                return Err(bad(format!(
                    "{key}: expected a string or a map of languages"
                )));
            }
        }
    }
    if texts.is_empty() {
        return Err(bad("holds no texts".into()));
    }
    Ok(texts)
}

async fn manifest(cmd: &ConfigCommand, pool: &PgPool, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Set { id, file } => {
            let manifest = read_manifest(file)?;
            store::set_manifest(pool, *id, &manifest).await?;
            writeln!(out, "manifest of bot {id} replaced")?;
        }
        ConfigCommand::Show { id } => {
            let bot = store::get_bot(pool, *id).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&bot.manifest.0).unwrap_or_default()
            )?;
        }
        ConfigCommand::Check => unreachable!("handled before connecting"),
    }
    Ok(())
}
