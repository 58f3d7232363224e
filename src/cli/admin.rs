//! The operator commands: bots, texts, manifests, history, reload — parse, call the service
//! layer ([`crate::admin`]), print.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::{BotCommand, CliError, Command, ConfigCommand, TextCommand};
use crate::admin::bots::{DatabaseFate, NewBot};
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
        return super::migrate::migrate(args, settings, &options, out).await;
    }
    let pool = panel::connect(&options, 2).await?;
    let admin = Admin::new(pool.clone(), Arc::new(settings.clone()));
    let result = match command {
        Command::Bot(cmd) => bot(cmd, &admin, out).await,
        Command::Text(cmd) => text(cmd, &admin, out).await,
        Command::Config(cmd) => manifest(cmd, &admin, out).await,
        Command::History {
            id,
            chat,
            limit,
            json,
        } => history(&admin, *id, *chat, *limit, *json, out).await,
        Command::Reload { id } => {
            admin.reload(*id).await?;
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
        }
        BotCommand::List { json } => {
            let views = admin.list_bots().await?;
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
                        v.state.as_deref().unwrap_or("-"),
                        v.telegram_username
                            .as_deref()
                            .map(|u| format!("@{u}"))
                            .unwrap_or("-".into()),
                        v.database
                    )?;
                }
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
    }
    Ok(())
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
    } else {
        for m in &messages {
            let at = m.created_at.format("%Y-%m-%d %H:%M:%S");
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
    }
    Ok(())
}

async fn manifest(cmd: &ConfigCommand, admin: &Admin, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Set { id, file } => {
            let text = read_file(file)?;
            match admin.replace_manifest(*id, &text).await {
                Err(e @ AdminError::Manifest(_)) => about_file(file, Err(e))?,
                other => other?,
            }
            writeln!(out, "manifest of bot {id} replaced")?;
        }
        ConfigCommand::Show { id } => {
            let manifest = admin.manifest(*id).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&manifest).unwrap_or_default()
            )?;
        }
        ConfigCommand::Check => unreachable!("handled before connecting"),
    }
    Ok(())
}
