//! The operator commands: bots, texts, manifests, history, reload — parse, call the service
//! layer ([`crate::admin`]), print.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::{BotCommand, CliError, Command, ConfigCommand, TextCommand};
use crate::admin::bots::{BotView, DatabaseFate, NewBot};
use crate::admin::manifests::ManifestChange;
use crate::admin::texts::TextsFormat;
use crate::admin::{Admin, AdminError};
use crate::mask::error_line;
use crate::panel;
use crate::settings::Settings;

impl From<AdminError> for CliError {
    fn from(e: AdminError) -> Self {
        match &e {
            AdminError::InvalidDatabase(reason) => {
                CliError::input(format!("invalid --database: {reason}"))
            }
            _ if e.is_bad_input() => CliError::input(error_line(&e)),
            _ => CliError::failure(error_line(&e)),
        }
    }
}

pub(super) async fn run(
    command: &Command,
    settings: &Settings,
    actor: String,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Command::Config(ConfigCommand::Check { offline }) = command {
        return check(settings, *offline, out).await;
    }
    let options = settings.panel_connect_options()?;
    if let Command::Migrate(args) = command {
        return super::migrate::migrate(args, settings, &options, out).await;
    }
    let pool = panel::connect(&options, 2).await?;
    let admin = Admin::new(pool.clone(), Arc::new(settings.clone())).acting_as(actor);
    let result = match command {
        Command::Bot(cmd) => bot(cmd, &admin, out).await,
        Command::Text(cmd) => text(cmd, &admin, out).await,
        Command::Config(cmd) => manifest(cmd, &admin, out).await,
        Command::Secret(cmd) => super::secret::run(cmd, &admin, out).await,
        Command::User(cmd) => super::secret::user(cmd, &admin, out).await,
        Command::History {
            id,
            chat,
            limit,
            json,
        } => history(&admin, *id, *chat, *limit, *json, out).await,
        Command::Broadcast(cmd) => super::mailing::broadcast(cmd, &admin, out).await,
        Command::Schedule(cmd) => super::mailing::schedule(cmd, &admin, out).await,
        Command::Status { json: as_json } => {
            let status = admin.cluster_status().await?;
            if *as_json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                )?;
                return Ok(());
            }
            writeln!(out, "instances:")?;
            if status.instances.is_empty() {
                writeln!(out, "  (none)")?;
            }
            for i in &status.instances {
                writeln!(
                    out,
                    "  {:<20} {:<5} host {} pid {}  heartbeat {}  bots owned {}",
                    i.name,
                    if i.live { "live" } else { "gone" },
                    i.host,
                    i.pid,
                    i.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    i.bots_owned
                )?;
            }
            writeln!(out, "bots by state:")?;
            if status.states.is_empty() {
                writeln!(out, "  (no bots)")?;
            }
            for (state, n) in &status.states {
                writeln!(out, "  {state:<12} {n}")?;
            }
            writeln!(out, "bots by database server:")?;
            if status.servers.is_empty() {
                writeln!(out, "  (no bots)")?;
            }
            for (server, n) in &status.servers {
                writeln!(out, "  {server}  {n}")?;
            }
            Ok(())
        }
        Command::Reload { id } => {
            admin.reload(*id).await?;
            match id {
                Some(id) => writeln!(out, "reload requested for bot {id}")?,
                None => writeln!(out, "reload requested for every bot")?,
            }
            Ok(())
        }
        Command::Operator(cmd) => super::operators::operator(cmd, &admin, out).await,
        Command::Keys(crate::cli::KeysCommand::Rotate { batch_size }) => {
            let r = admin.rotate_keys(*batch_size).await?;
            writeln!(
                out,
                "{} rotation: every token and secret is sealed with master key {} ({} re-sealed \
                 by this run); retired: {}",
                if r.resumed {
                    "finished an interrupted"
                } else {
                    "done"
                },
                r.key,
                r.resealed,
                if r.retired.is_empty() {
                    "none".to_owned()
                } else {
                    r.retired.join(", ")
                }
            )?;
            Ok(())
        }
        Command::Keys(_)
        | Command::Migrate(_)
        | Command::Serve
        | Command::Sandbox(_)
        | Command::Panel(_) => {
            unreachable!("handled by the caller or above")
        }
    };
    pool.close().await;
    result
}

/// `config check`: the settings, masked, then whether the panel answers (unless `offline`).
async fn check(settings: &Settings, offline: bool, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "# settings are valid; effective values (secrets masked):"
    )?;
    write!(out, "{}", settings.to_masked_toml())?;
    if offline {
        writeln!(out, "# panel: not tried (--offline)")?;
        return Ok(());
    }
    let options = settings.panel_connect_options()?;
    match panel::connect(&options, 1).await {
        Ok(pool) => {
            pool.close().await;
            writeln!(
                out,
                "# panel: reachable at {}",
                crate::schema::describe(&options)
            )?;
            Ok(())
        }
        Err(e) => {
            let line = error_line(&e);
            writeln!(out, "# panel: unreachable: {line}")?;
            Err(CliError::failure(line))
        }
    }
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))
}

/// Runs `call` on a file's content, naming the file in its error.
fn about_file<T>(path: &Path, result: Result<T, AdminError>) -> Result<T, CliError> {
    result.map_err(|e| {
        let mut error = CliError::from(e);
        error.message = format!("{}: {}", path.display(), error.message);
        error
    })
}

async fn bot(cmd: &BotCommand, admin: &Admin, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        BotCommand::Add {
            name,
            token,
            manifest,
            disabled,
            database,
        } => {
            let manifest_text = manifest.as_deref().map(read_file).transpose()?;
            let new = NewBot {
                name,
                token,
                manifest: manifest_text.as_deref(),
                enabled: !disabled,
                database: database.as_deref(),
            };
            let id = match (manifest, admin.add_bot(&new).await) {
                (Some(path), Err(e @ AdminError::Manifest(_))) => about_file(path, Err(e))?,
                (_, result) => result?,
            };
            writeln!(out, "{id}")?;
            warn_about_texts(admin, id).await?;
        }
        BotCommand::List { json, state } => {
            let all = admin.list_bots().await?;
            let views: Vec<&BotView> = all
                .iter()
                .filter(|v| state.is_empty() || v.state.as_ref().is_some_and(|s| state.contains(s)))
                .collect();
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&views).unwrap_or_default()
                )?;
            } else {
                write_bot_table(&views, out)?;
                let mut line = summary(&views);
                if !state.is_empty() {
                    line.push_str(&format!(
                        " (state {}; {} bots in all)",
                        state.join(", "),
                        all.len()
                    ));
                }
                writeln!(out, "{line}")?;
            }
        }
        BotCommand::Show { id, json } => {
            let v = admin.show_bot(*id).await?;
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                )?;
            } else {
                let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
                writeln!(out, "id:          {}", v.id)?;
                writeln!(out, "name:        {}", v.name)?;
                writeln!(out, "token:       {}", v.token)?;
                writeln!(out, "enabled:     {}", if v.enabled { "yes" } else { "no" })?;
                writeln!(out, "database:    {}", v.database)?;
                writeln!(out, "server:      {}", v.server)?;
                writeln!(out, "version:     {}", v.version)?;
                writeln!(out, "texts:       {}", v.texts)?;
                writeln!(out, "state:       {}", or_dash(&v.state))?;
                writeln!(out, "detail:      {}", or_dash(&v.detail))?;
                writeln!(
                    out,
                    "username:    {}",
                    v.telegram_username
                        .as_deref()
                        .map(|u| format!("@{u}"))
                        .unwrap_or("-".into())
                )?;
                writeln!(out, "instance:    {}", or_dash(&v.instance))?;
                writeln!(
                    out,
                    "started_at:  {}",
                    v.started_at.map(|t| t.to_rfc3339()).unwrap_or("-".into())
                )?;
                writeln!(out, "created_at:  {}", v.created_at.to_rfc3339())?;
                let default = if v.mode_is_default { " (default)" } else { "" };
                writeln!(out, "mode:        {}{default}", v.mode)?;
                if let Some(w) = &v.webhook {
                    let url = if w.url.is_empty() {
                        "(none set)"
                    } else {
                        &w.url
                    };
                    writeln!(out, "webhook:     {url}")?;
                    writeln!(
                        out,
                        "pending:     {}",
                        w.pending_update_count
                            .map_or_else(|| "-".into(), |n| n.to_string())
                    )?;
                    let error = match (&w.last_error_message, w.last_error_at) {
                        (Some(m), Some(at)) => format!("{m} (at {})", at.to_rfc3339()),
                        (Some(m), None) => m.clone(),
                        _ => "-".into(),
                    };
                    writeln!(out, "last_error:  {error}")?;
                    writeln!(
                        out,
                        "checked_at:  {}",
                        w.checked_at.map(|t| t.to_rfc3339()).unwrap_or("-".into())
                    )?;
                }
            }
        }
        BotCommand::Enable { id } => {
            admin.set_enabled(*id, true).await?;
            writeln!(out, "bot {id} enabled")?;
        }
        BotCommand::Disable { id } => {
            admin.set_enabled(*id, false).await?;
            writeln!(out, "bot {id} disabled")?;
        }
        BotCommand::SetToken { id, token } => {
            let token = admin.set_token(*id, token).await?;
            writeln!(out, "bot {id} token set to {token}")?;
        }
        BotCommand::SetMode { id, mode } => {
            admin.set_mode(*id, mode).await?;
            writeln!(out, "bot {id} mode set to {mode}")?;
        }
        BotCommand::Rename { id, name } => {
            admin.rename_bot(*id, name).await?;
            writeln!(out, "bot {id} renamed to {name}")?;
        }
        BotCommand::Remove {
            id,
            drop_database,
            yes,
        } => {
            let fate = admin.remove_bot(*id, *drop_database, *yes).await?;
            writeln!(out, "bot {id} removed")?;
            match fate {
                DatabaseFate::Dropped(db) => writeln!(out, "database {db} dropped")?,
                DatabaseFate::Missing(db) => writeln!(out, "database {db} did not exist")?,
                DatabaseFate::Kept(db) => writeln!(out, "database {db} kept")?,
                DatabaseFate::Unknown => {}
            }
        }
        BotCommand::Export {
            id,
            out: file,
            with_token,
        } => {
            let tools = crate::admin::archive::PgTools::default();
            let report = admin.export_bot(*id, file, *with_token, &tools).await?;
            if report.with_token {
                eprintln!(
                    "warning: {} holds bot {id}'s token IN CLEAR: anyone with the file can run \
                     the bot; keep it like the token itself",
                    file.display()
                );
            }
            for part in &report.parts {
                writeln!(
                    out,
                    "{:<14} {:>12} bytes  sha256 {}",
                    part.name, part.bytes, part.sha256
                )?;
            }
            if report.database.is_none() {
                writeln!(out, "(the bot has no database yet: none exported)")?;
            }
            writeln!(out, "bot {id} exported to {}", file.display())?;
        }
        BotCommand::Move {
            id,
            server,
            drop_old,
        } => {
            let tools = crate::admin::archive::PgTools::default();
            let opts = crate::admin::moving::MoveOptions {
                server: server.as_deref(),
                drop_old: *drop_old,
                halt_after: None,
            };
            let r = admin.move_bot(*id, &opts, &tools).await?;
            for note in &r.notes {
                eprintln!("{note}");
            }
            if let Some(from) = &r.from {
                let copied = match r.tables_verified {
                    Some(n) => format!("database {} copied ({n} tables verified)", r.database),
                    None => "no database yet: it is created there on the next start".to_owned(),
                };
                eprintln!("bot {id} moved from {from} to {}: {copied}", r.to);
            }
            if let Some(kept) = &r.old_kept {
                eprintln!(
                    "the old database is kept: {kept}; drop it with `botvisor bot move {id} \
                     --drop-old` once you no longer need it"
                );
            }
            for dropped in &r.dropped {
                eprintln!("dropped the old database {dropped}");
            }
            if r.from.is_some() && r.enabled {
                eprintln!("bot {id} is enabled again");
            }
            writeln!(out, "{}", r.to)?;
        }
        BotCommand::Import {
            file,
            name,
            into: Some(id),
            with_token,
        } => {
            let tools = crate::admin::archive::PgTools::default();
            let opts = crate::admin::archive::IntoOptions {
                name: name.as_deref(),
                with_token: *with_token,
                halt_after: None,
            };
            let r = admin.import_bot_into(file, *id, &opts, &tools).await?;
            for note in &r.notes {
                eprintln!("{note}");
            }
            let database = r.database.as_deref().map_or(
                "the archive has no database: the bot gets a new one on its next start".to_owned(),
                |d| match r.tables_verified {
                    Some(n) => format!("database {d} restored ({n} tables verified)"),
                    None => format!("database {d} restored (archive version 1: no row counts)"),
                },
            );
            eprintln!(
                "bot {id} ({}) restored in place: {} texts, {} text and {} manifest versions, \
                 {database}",
                r.name, r.texts, r.text_versions, r.manifest_versions
            );
            if r.token_replaced {
                eprintln!("bot {id} now has the archive's token");
            }
            if r.enabled {
                eprintln!("bot {id} is enabled again");
            }
            writeln!(out, "{id}")?;
        }
        BotCommand::Import {
            file,
            name,
            into: None,
            ..
        } => {
            let tools = crate::admin::archive::PgTools::default();
            let r = admin.import_bot(file, name.as_deref(), &tools).await?;
            writeln!(out, "{}", r.id)?;
            let database = r
                .database
                .as_deref()
                .map_or("no database in the archive".to_owned(), |d| {
                    format!("database {d} restored")
                });
            eprintln!(
                "imported as bot {} ({}): {} texts, {database}",
                r.id, r.name, r.texts
            );
            if let Some(holder) = &r.token_held_by {
                eprintln!(
                    "warning: the archive's token is already registered for {holder}: bot {} \
                     has no token; set one with `botvisor bot set-token {} TOKEN`",
                    r.id, r.id
                );
            } else if !r.token {
                eprintln!(
                    "bot {} has no token and is disabled: `botvisor bot set-token {} TOKEN`, \
                     then `botvisor bot enable {}`",
                    r.id, r.id, r.id
                );
            } else if !r.enabled {
                eprintln!("bot {} is disabled, as it was when exported", r.id);
            }
            if !r.secrets.is_empty() {
                eprintln!(
                    "secrets to set again (values are never exported): {}",
                    r.secrets.join(", ")
                );
            }
        }
        BotCommand::Erase { id, yes } => {
            let fate = admin.erase_bot(*id, *yes).await?;
            match fate {
                DatabaseFate::Dropped(db) => writeln!(out, "database {db} dropped")?,
                DatabaseFate::Missing(db) => writeln!(out, "database {db} did not exist")?,
                DatabaseFate::Kept(db) => writeln!(out, "database {db} kept")?,
                DatabaseFate::Unknown => {
                    writeln!(out, "its database override is invalid: nothing was dropped")?
                }
            }
            writeln!(out, "bot {id} erased with its texts and secrets")?;
        }
    }
    Ok(())
}

/// Widest a column of `bot list` grows before its values are cut with `…`.
const MAX_COLUMN: usize = 32;

/// Widest the last column (DETAIL) of `bot list` grows.
const MAX_DETAIL: usize = 60;

/// `value` cut to `max` characters, the last one an ellipsis when cut; newlines flattened.
fn truncate(value: &str, max: usize) -> String {
    let flat = value.replace(['\n', '\r', '\t'], " ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Prints `bot list`'s table: ID first, NAME second (scripts read them), columns as wide as
/// their longest value up to [`MAX_COLUMN`].
fn write_bot_table(views: &[&BotView], out: &mut dyn Write) -> Result<(), CliError> {
    const HEADERS: [&str; 8] = [
        "ID", "NAME", "TOKEN", "ENABLED", "STATE", "USERNAME", "DATABASE", "DETAIL",
    ];
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            let cell = |s: &str| truncate(s, MAX_COLUMN);
            [
                v.id.to_string(),
                cell(&v.name),
                cell(&v.token),
                if v.enabled { "yes" } else { "no" }.to_owned(),
                cell(v.state.as_deref().unwrap_or("-")),
                cell(
                    &v.telegram_username
                        .as_deref()
                        .map(|u| format!("@{u}"))
                        .unwrap_or("-".into()),
                ),
                cell(&v.database),
                truncate(
                    v.detail.as_deref().filter(|d| !d.is_empty()).unwrap_or("-"),
                    MAX_DETAIL,
                ),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$} "));
            }
        }
        text
    };
    writeln!(out, "{}", line(HEADERS))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

/// `47 bots: 45 running, 1 failed, 1 disabled` — disabled bots count as disabled whatever
/// their last state; enabled ones without a status as `no status`.
fn summary(views: &[&BotView]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in views {
        let class = match (v.enabled, v.state.as_deref()) {
            (false, _) => "disabled",
            (true, Some(state)) => state,
            (true, None) => "no status",
        };
        match counts.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => counts.push((class, 1)),
        }
    }
    let order = |class: &str| {
        super::BOT_STATES
            .iter()
            .position(|s| *s == class)
            .unwrap_or(match class {
                "no status" => 100,
                "disabled" => 101,
                _ => 99,
            })
    };
    counts.sort_by_key(|(class, _)| order(class));
    let noun = if views.len() == 1 { "bot" } else { "bots" };
    if counts.is_empty() {
        return format!("0 {noun}");
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
    format!("{} {noun}: {}", views.len(), parts.join(", "))
}

async fn history(
    admin: &Admin,
    id: i64,
    chat: i64,
    limit: i64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let messages = admin.chat_history(id, chat, limit).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&messages).unwrap_or_default()
        )?;
    } else if messages.is_empty() {
        writeln!(out, "no messages in chat {chat} of bot {id}")?;
    } else {
        for m in &messages {
            let at = m.created_at.format("%Y-%m-%d %H:%M:%S UTC");
            writeln!(out, "{at} {:<5} {}", m.role, m.content.replace('\n', "\\n"))?;
        }
    }
    Ok(())
}

async fn text(cmd: &TextCommand, admin: &Admin, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        TextCommand::Set {
            id,
            key,
            value,
            lang,
        } => {
            let lang = admin.set_text(*id, key, lang.as_deref(), value).await?;
            writeln!(out, "text {key} [{lang}] set for bot {id}")?;
        }
        TextCommand::Get { id, key, lang } => {
            let text = admin.get_text(*id, key, lang.as_deref()).await?;
            writeln!(out, "{}", text.value)?;
        }
        TextCommand::Delete { id, key, lang } => {
            let lang = admin.delete_text(*id, key, lang.as_deref()).await?;
            writeln!(out, "text {key} [{lang}] deleted from bot {id}")?;
            warn_about_texts(admin, *id).await?;
        }
        TextCommand::List { id, json } => {
            let texts = admin.list_texts(*id).await?;
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
            let document = read_file(file)?;
            let format = if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
            {
                TextsFormat::Toml
            } else {
                TextsFormat::Json
            };
            let count = match admin.import_texts(*id, &document, format).await {
                Err(e @ AdminError::InvalidTexts(_)) => about_file(file, Err(e))?,
                other => other?,
            };
            writeln!(out, "{count} texts imported for bot {id}")?;
        }
        TextCommand::Export { id } => {
            let map = admin.export_texts(*id).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&map).unwrap_or_default()
            )?;
        }
        TextCommand::History { .. } | TextCommand::Rollback { .. } => {
            super::operators::text_versions(cmd, admin, out).await?;
        }
    }
    Ok(())
}

async fn manifest(cmd: &ConfigCommand, admin: &Admin, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Set { id, file } | ConfigCommand::Patch { id, file } => {
            let text = read_file(file)?;
            let (result, done) = if let ConfigCommand::Set { .. } = cmd {
                (admin.replace_manifest(*id, &text).await, "replaced")
            } else {
                (admin.patch_manifest(*id, &text).await, "patched")
            };
            let change = match result {
                Err(e @ AdminError::Manifest(_)) => about_file(file, Err(e))?,
                other => other?,
            };
            write_change(&change, out)?;
            writeln!(out, "manifest of bot {id} {done}")?;
            warn_about_texts(admin, *id).await?;
        }
        ConfigCommand::Show { id } => {
            let manifest = admin.manifest(*id).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&manifest).unwrap_or_default()
            )?;
        }
        ConfigCommand::History { .. } | ConfigCommand::Rollback { .. } => {
            super::operators::manifest_versions(cmd, admin, out).await?;
        }
        ConfigCommand::Check { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// Says on stderr what the bot's texts lack for its manifest (the output stays the result).
async fn warn_about_texts(admin: &Admin, id: i64) -> Result<(), CliError> {
    for warning in admin.text_warnings(id).await? {
        eprintln!("warning: bot {id}: {warning}");
    }
    Ok(())
}

/// Prints what a manifest change does, by top-level key.
pub(super) fn write_change(change: &ManifestChange, out: &mut dyn Write) -> Result<(), CliError> {
    if change.is_empty() {
        writeln!(out, "no changes")?;
    }
    for (what, keys) in [
        ("added", &change.added),
        ("removed", &change.removed),
        ("changed", &change.changed),
    ] {
        if !keys.is_empty() {
            writeln!(out, "{what}: {}", keys.join(", "))?;
        }
    }
    Ok(())
}
